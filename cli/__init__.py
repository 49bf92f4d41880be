"""The command line, `python -m search <command>`: one module per subcommand (`cli.main` lists them), the
options several share declared once (`cli.options`). The commands parse and print; what they do lives in the
library packages below (`search`, `evaluation`).
"""
