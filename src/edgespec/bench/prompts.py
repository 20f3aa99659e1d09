"""The benchmark prompts: short Python openings like the bundled pair's training data (torch-free, shared by benchmarks, profile and testbed)."""

__all__ = ["PROMPTS"]

PROMPTS = (
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    \"\"\"A last-in, first-out container.\"\"\"\n\n    def __init__(self):\n",
    "def read_config(path):\n    \"\"\"Read a configuration file and return a dict.\"\"\"\n",
    "    def __repr__(self):\n        return ",
    "for i in range(len(items)):\n    if ",
    "try:\n    import threading\nexcept ImportError:\n",
    "def _check_arg(name, value):\n    if not isinstance(value, int):\n        raise TypeError(",
    "\n\nclass Error(Exception):\n    \"\"\"Base class for exceptions in this module.\"\"\"\n",
)
