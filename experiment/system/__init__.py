"""How a command meets its operating system: durable files, signals, the console's
streams, the process's exit, SQLite files, secrets kept out of files."""
