"""The Dynamic-MNIST demo (``python -m translution_ext demo``)."""
from .experiment import DESCRIPTION, add_arguments, check_deployment, run

__all__ = ["DESCRIPTION", "add_arguments", "check_deployment", "run"]
