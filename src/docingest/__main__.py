import sys

from docingest.cli import main

sys.exit(main())
