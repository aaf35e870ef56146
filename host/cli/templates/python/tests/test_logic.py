"""Unit tests of the agent's logic: `python3 -m unittest discover -s tests`."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from logic import answer  # noqa: E402


class AnswerTest(unittest.TestCase):
    def test_greets_the_input_or_the_world(self):
        self.assertEqual(answer("Hello", " Ada ", 3), "Hello, Ada! (ring 3)")
        self.assertEqual(answer("Howdy", "", 2), "Howdy, world! (ring 2)")


if __name__ == "__main__":
    unittest.main()
