import sys

from fwemu.cli import main

sys.exit(main())
