import sys

from trainers.recsys.cli import main

sys.exit(main())
