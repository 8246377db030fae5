"""Defenses: quantization schemes, the quantized model, clipping, reparameterized norms, training recipes and
the defense registry."""

from .quantization import QuantScheme, normal, rquant, quantize_tensor, dequantize_tensor  # noqa: F401
from .quantized_model import QuantizedModel, select_parameters  # noqa: F401
from .qat import FlatQuantizer  # noqa: F401
from .training import TrainConfig, Trainer, QATStep, train, evaluate_error  # noqa: F401
from .tasks import CLASSIFICATION, NEXT_TOKEN, TASKS, Classification, NextToken, Task, task_for  # noqa: F401
from .randbet import RandBETStep  # noqa: F401
from .base import Defense  # noqa: F401
from bitbench.configs.registries import DEFENSES, create_defense, list_defenses, register_defense  # noqa: F401
from bitbench.configs.spec import SpecError  # noqa: F401
from .zoo import BitErrorTraining, Clip, Normal, Quant, RandBET, RQuant  # noqa: F401
