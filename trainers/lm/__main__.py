import sys

from trainers.lm.cli import main

sys.exit(main())
