"""The benchmark prompts (torch-free, shared by benchmarks, profile and testbed).

- `PROMPTS`: short Python openings like the bundled pair's training data.
- `INSTRUCTIONS`: user requests for an instruct pair (SmolLM2), sent through its chat template. They
  are held back: `scripts/train_smollm2_draft.py` trains its draft on other instructions and
  refuses to run if any of these is among them, so acceptance measured on them is out of sample.
"""

__all__ = ["PROMPTS", "INSTRUCTIONS", "prompts_for"]

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

INSTRUCTIONS = (
    "Write a Python function that checks whether a number is prime.",
    "What is the difference between a list and a tuple in Python?",
    "Explain how a binary search works.",
    "Give me three tips for staying focused while studying.",
    "What causes the seasons on Earth?",
    "Write a short poem about autumn leaves.",
    "How do I remove duplicates from a list in Python?",
    "Describe the water cycle in simple terms.",
    "What are the main benefits of regular exercise?",
    "Write a Python function that counts the vowels in a string.",
    "Explain what an API is to a beginner.",
    "Suggest a healthy breakfast for a busy morning.",
)


def prompts_for(chat: bool) -> tuple[str, ...]:
    """The prompt set that suits a pair: instructions for an instruct (chat) pair, code openings otherwise."""
    return INSTRUCTIONS if chat else PROMPTS
