"""Command line: `python -m dlsr_core {extract,train,score,evaluate} --help`.

Exit codes: 0 success (also "nothing to do"); 2 bad input or an unusable file/folder (unknown or missing dataset,
missing/damaged checkpoint or resume file, unavailable weights, bad option values, unwritable output, not enough
memory), printed as one line starting with "error:"; 3 training diverged (NaN/Inf loss or a loss far above an
untrained model's; the last good checkpoint is kept); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
Every option is checked when the command line is parsed (dlsr_core.options), and every dataset is opened before the
first one is extracted, so a mistake is reported in seconds, not after minutes of feature extraction.

`--preset paper|official` picks every option of dlsr_core.presets at once; an explicit option flag overrides it.

Layout: ``dispatch`` (parser, dispatch, exit codes), one module per command (``extract``, ``train``, ``score``,
``evaluate``: each ``add_parser`` + ``run``) over the shared option groups (``arguments``, checks in
dlsr_core.options), the dataset/feature steps (``datasets``) and the scored detector (``sampling``).
"""

from dlsr_core.cli.dispatch import build_parser, main

__all__ = ["build_parser", "main"]
