"""Two tools written the way `episodes.tools` loads them: plain functions with type hints and a
Google-style docstring, exactly as TRL's `GRPOTrainer(tools=...)` takes them (see docs/tools.md).

    episodes.tool_format: chat_template
    episodes.tools: [calculator, examples/tools_example.py:constant, examples/tools_example.py:to_metres]

The docstring and hints become the JSON schema the chat template shows the model. A tool may be
async, and may raise: the model gets the error ("Error: ValueError: ...") as the tool's result.
These run in the trainer's process (trusted code, like a reward function); only model-written code
is untrusted, and it runs in the sandbox (the built-in `python` tool).
"""

import asyncio

CONSTANTS = {"pi": "3.141592653589793", "e": "2.718281828459045", "speed_of_light_m_s": "299792458",
             "avogadro": "6.02214076e23"}
METRES = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "inch": 0.0254, "foot": 0.3048, "mile": 1609.344}


def constant(name: str) -> str:
    """Look up a mathematical or physical constant by name.

    Args:
        name: One of pi, e, speed_of_light_m_s, avogadro.
    """
    if name not in CONSTANTS:
        raise ValueError(f"no constant {name!r}; known: {', '.join(CONSTANTS)}")
    return CONSTANTS[name]


async def to_metres(value: float, unit: str) -> str:
    """Convert a length to metres.

    Args:
        value: The length.
        unit: Its unit: mm, cm, m, km, inch, foot or mile.
    """
    await asyncio.sleep(0)  # stands for an awaited service call
    if unit not in METRES:
        raise ValueError(f"unknown unit {unit!r}; known: {', '.join(METRES)}")
    return f"{value * METRES[unit]:g}"
