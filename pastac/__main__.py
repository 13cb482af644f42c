import sys

from pastac.cli.main import entry

sys.exit(entry())
