"""`groupo chat RUN_DIR | MODEL`: talk to a trained policy in the terminal, tokens streamed as they come.

    groupo chat runs/quickstart            # the run's trained policy
    groupo chat runs/quickstart --base     # the same run's untrained base model, to compare
    groupo chat smollm2-135m-instruct      # any model groupo can load

Each line read is a user turn; the conversation so far goes through the model's chat template
(`groupo.data.prompts.encode_prompt`, as in training) and the answer streams through transformers'
`TextIteratorStreamer`. A run's `rollout.chat_template_kwargs` (Qwen3's `enable_thinking`, say) go to
the template as in training; `--chat-template-kwargs` sets them for a model or overrides the run's.
Greedy decoding unless --temperature > 0. `/exit`, `/quit` or end of input
(Ctrl-D) ends the session; `/reset` forgets the conversation. With input from a pipe no prompt
is printed, so stdout holds one answer per line.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TextIO

from groupo.config import ConfigError, read_yaml


def load_chat_model(name: str, base: bool, device: str):
    """(model, tokenizer, label): a run's policy (or with `base` its base model), or a model by name."""
    from groupo.models import load_model, load_trained

    p = Path(name).expanduser()
    is_run = (p / "config.yaml").is_file() and (p / "final").is_dir()
    if not is_run:
        if base:
            raise ConfigError(f"--base needs a run directory; {name} is not one (no config.yaml and final/)")
        model, tok = load_model(name, device=device)
        return model, tok, name
    model_cfg = read_yaml(p / "config.yaml").get("model", {})
    dtype = str(model_cfg.get("dtype", "float32"))
    if base:
        model, tok = load_model(model_cfg["name"], model_cfg.get("revision"), dtype, device)
        return model, tok, f"{model_cfg['name']} (untrained base of {p})"
    model, tok = load_trained(p, dtype=dtype, device=device)
    return model, tok, f"{p} (trained)"


def reply(model, tokenizer, messages: list[dict], out: TextIO, *, max_new_tokens: int,
          temperature: float, template_kwargs: dict | None = None) -> str:
    """Generate the assistant's answer to `messages`, writing it to `out` as it streams; returns it."""
    import torch
    from transformers import TextIteratorStreamer

    from groupo.data.prompts import encode_prompt

    ids = torch.tensor([encode_prompt(tokenizer, messages, template_kwargs)], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                  streamer=streamer, pad_token_id=tokenizer.pad_token_id, **sampling)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        out.write(piece)
        out.flush()
    thread.join()
    out.write("\n")
    out.flush()
    if errors:
        raise errors[0]
    return "".join(pieces)


def episode_reply(sampler, messages: list[dict], out: TextIO, *, max_new_tokens: int,
                  temperature: float) -> list[dict]:
    """One episode with the run's tools (groupo.rollout.sampler) answering `messages`: written to
    `out` whole once it ends (tool results included); returns its assistant and tool messages."""
    from groupo.types import Problem, SamplingParams

    params = SamplingParams(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=0)
    episode = sampler([Problem(messages=list(messages), answer="")], params)[0][0]
    out.write(episode.text + "\n")
    out.flush()
    return episode.messages or [{"role": "assistant", "content": episode.text}]


def chat_loop(model, tokenizer, inp: TextIO, out: TextIO, *, system: str | None = None,
              max_new_tokens: int = 256, temperature: float = 0.0, prompt: str = "", sampler=None,
              template_kwargs: dict | None = None) -> int:
    """Read user turns from `inp` until /exit or EOF; stream each answer to `out`. Returns turns
    answered. With `sampler` (a run trained with tools), each answer is an episode with its tools
    (whose format renders with the run's own template arguments); `template_kwargs` go to the chat
    template otherwise."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    start = len(messages)
    turns = 0
    while True:
        if prompt:
            out.write(prompt)
            out.flush()
        line = inp.readline()
        if not line:  # EOF
            break
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            del messages[start:]
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        if sampler is not None:
            messages += episode_reply(sampler, messages, out, max_new_tokens=max_new_tokens, temperature=temperature)
        else:
            answer = reply(model, tokenizer, messages, out, max_new_tokens=max_new_tokens, temperature=temperature,
                           template_kwargs=template_kwargs)
            messages.append({"role": "assistant", "content": answer})
        turns += 1
    return turns
