"""The memory chat in a terminal: ``python -m magistral_kit chat --cube NAME``.

Commands at the prompt: ``mem`` lists the memories, ``mem QUERY`` searches them with scores, ``quit``
(or Ctrl-D) ends the session and releases the cube. Every turn prints what the notebook's `Turn` shows,
as text.
"""
from __future__ import annotations

import argparse
import sys
from typing import TextIO

from magistral_kit.config import ConfigError, KitConfig


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m magistral_kit")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat with memory in the terminal")
    chat.add_argument("--cube", default="default", help="cube folder; a bare name lives under data/cubes/")
    chat.add_argument("--model", default="embedded", help="'embedded', a hub id or a model folder")
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--temperature", type=float, default=0.1)
    chat.add_argument("--no-memory", action="store_true", help="chat without retrieving or storing")
    args = parser.parse_args(argv)
    try:
        config = KitConfig(cube_dir=args.cube, model=args.model, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, memory=not args.no_memory)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return _chat_loop(config, stdin, stdout)


def _chat_loop(config: KitConfig, stdin: TextIO, stdout: TextIO) -> int:
    from magistral_kit.chat.session import open_chat

    def say(text: str = "") -> None:
        print(text, file=stdout, flush=True)

    chat = open_chat(config, progress=False)
    say(f"model {chat.lm.name} on {chat.lm.device}; cube {chat.memory.path} with {len(chat.memory)} memories")
    say("type a message; 'mem' lists memories, 'mem QUERY' searches, 'quit' ends")
    try:
        while True:
            stdout.write("you> ")
            stdout.flush()
            line = stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("quit", "exit"):
                break
            if text == "mem" or text.startswith("mem "):
                _show_memories(chat.memory, text[4:].strip(), say)
                continue
            preview = chat.preview_correction(text)
            if preview is not None:  # "forget that …" / "that's wrong, it's …": show, ask, apply
                say("memory change:\n  " + preview.describe().replace("\n", "\n  "))
                if preview.problem:
                    continue
                stdout.write("apply? [y/N] ")
                stdout.flush()
                if stdin.readline().strip().lower() not in ("y", "yes"):
                    say("  not applied")
                    continue
            stdout.write("assistant> ")
            try:
                turn = chat.send(text, on_text=lambda piece: (stdout.write(piece), stdout.flush()))
            except KeyboardInterrupt:  # Ctrl-C stops this turn, not the chat (Chat.send kept it consistent)
                say(f"\n  ! {chat.turns[-1].problems[-1] if chat.turns else 'interrupted'}")
                continue
            say()
            _show_turn(turn, say)
    finally:
        chat.close()
        say("cube released")
    return 0


def _show_memories(memory, query: str, say) -> None:
    if query:
        for hit in memory.search(query, top_k=10):
            say(f"  {hit.score:.3f}  {hit.text}  [{hit.id} from {', '.join(hit.source) or '-'}]")
        return
    items = memory.items()
    say(f"{len(items)} memories")
    for row in items.itertuples():
        status = "" if getattr(row, "status", "activated") in ("activated", None) else f" ({row.status})"
        say(f"  {row.id}  {row.kind:9} {row.text}{status}")


def _show_turn(turn, say) -> None:
    if turn.reply and turn.reply.thinking:
        say(f"  (reasoning: {len(turn.reply.thinking)} characters)")
    for hit in turn.retrieved:
        say(f"  retrieved {hit.score:.3f}: {hit.text}")
    if turn.plan:
        say(f"  prompt {turn.plan.tokens} tokens; trimmed: {turn.plan.trimmed}")
    if turn.message_kind and turn.message_kind != "correction":
        say(f"  stored verbatim as {turn.message_kind}" + (f"; archived {len(turn.superseded)} older" if
                                                             turn.superseded else ""))
    if turn.extraction is not None:
        say(f"  extraction via {turn.extraction.path}: {[i.text for i in turn.extraction.items]}")
        for item in turn.extraction.rejected:
            say(f"  rejected (not grounded): {item.text!r}: {item.verdict.reason if item.verdict else ''}")
        say(f"  stored: {turn.stored_ids}")
    for problem in turn.problems:
        say(f"  ! {problem}")
    say("  " + ", ".join(f"{k} {v:.2f}s" for k, v in turn.timings.steps.items()) + f"; {turn.memory}")


if __name__ == "__main__":
    raise SystemExit(main())
