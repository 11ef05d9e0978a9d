"""A stateful environment written the way `episodes.environment` loads it (TRL's `environment_factory`
convention; see docs/tools.md):

    groupo train episodes.tool_format=chat_template episodes.environment=examples/env_game.py:GuessTheNumber

One instance per episode. `reset(**columns)` gets the dataset row (here its `secret` column, else a
number drawn from `seed`) and returns text appended to the prompt; the public method `guess` is the
model's tool; `done` ends the episode once the number is found; `get_reward` scores the episode.
"""

import random


class GuessTheNumber:
    def reset(self, secret: int | None = None, seed: int | None = None, **columns) -> str:
        self.secret = int(secret) if secret is not None else random.Random(seed).randint(1, 100)
        self.guesses, self.done = 0, False
        return "\nGuess my number between 1 and 100."

    def guess(self, n: int) -> str:
        """Guess the number.

        Args:
            n: Your guess, from 1 to 100.

        Returns:
            "higher" if the number is higher, "lower" if it is lower, "correct" if you found it.
        """
        self.guesses += 1
        if n == self.secret:
            self.done = True
            return "correct"
        return "higher" if self.secret > n else "lower"

    def get_reward(self) -> float:
        """1 / the number of guesses once found (1.0 at the first try), else 0."""
        return 1.0 / self.guesses if self.done else 0.0
