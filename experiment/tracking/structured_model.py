"""The logged form of a model whose inputs are several tensors (a tuple or a dict:
data/batches.py) or whose predictions are several: an MLflow pyfunc model that takes a
dict of arrays by name (the tuple's entries as `input_0`, `input_1`, ...) and answers an
array, or a dict of arrays for predictions of several tensors.

MLflow's PyTorch flavour takes one array (its pyfunc refuses dicts), so these models
are logged as a pyfunc `PythonModel` around the deployable module (deployable.py),
which is saved with `torch.save` as the model's one artifact: it loads back where its
classes are importable, as the pickled PyTorch format does. `mlflow.pyfunc.load_model`,
`mlflow models serve` (a JSON body of named `inputs`) and `experiment-predict` (an
.npz of named arrays) take it.
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from mlflow.types.type_hints import TypeFromExample


class NamedInputsModel(PythonModel):
    """`predict({name: array})` of a deployable module whose inputs are `names`, given
    to it as a tuple (`form` "tuple") or by keyword (`form` "dict")."""

    def __init__(self, names: list[str], form: str):
        self.names, self.form = list(names), form
        self.module = None

    def load_context(self, context) -> None:
        self.module = torch.load(context.artifacts["module"], weights_only=False).eval()

    # The input's type is the logged input example's (a dict of named arrays).
    def predict(self, context, model_input: TypeFromExample, params=None):
        missing = [name for name in self.names if name not in model_input]
        if missing:
            raise ValueError(
                f"this model takes the inputs {', '.join(self.names)}; missing: "
                f"{', '.join(missing)}"
            )
        tensors = {name: torch.as_tensor(np.asarray(model_input[name])) for name in self.names}
        inputs = tuple(tensors.values()) if self.form == "tuple" else tensors
        with torch.no_grad():  # the deployable module takes its inputs as one structure
            return as_arrays(self.module(inputs))


def as_arrays(outputs):
    """Predictions as an array, or a dict of arrays for several."""
    if isinstance(outputs, dict):
        return {k: v.detach().cpu().numpy() for k, v in outputs.items()}
    if isinstance(outputs, tuple | list):
        return {f"output_{i}": v.detach().cpu().numpy() for i, v in enumerate(outputs)}
    return outputs.detach().cpu().numpy()
