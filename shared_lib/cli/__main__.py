"""python -m shared_lib.cli"""

import sys

from shared_lib.cli import main

sys.exit(main())
