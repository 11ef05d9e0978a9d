import sys

from groupo.cli import main

sys.exit(main())
