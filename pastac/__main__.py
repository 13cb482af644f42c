import sys

from pastac.cli import main

sys.exit(main())
