import sys

from segclip.cli import main

sys.exit(main())
