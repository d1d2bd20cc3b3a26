"""`moa chat`: the prompt_toolkit REPL, and line mode for stdin that is not a terminal.

    session.py   the prompt: keys, history (one warning if its file is unusable), completion
    slash.py     ChatState and the slash commands; what a line is (command, prompt, exit)
    loop.py      the Repl: turns, Ctrl-C routing, warm-up while the user types
    lines.py     line mode: one turn per line, answers printed only once a turn succeeded

Only `cli/chat.py` imports this package, and only once `moa chat` runs: `moa --help`
never pays for prompt_toolkit.
"""
