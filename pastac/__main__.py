import sys

from pastac.cli.main import main

sys.exit(main())
