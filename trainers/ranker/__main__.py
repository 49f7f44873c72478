import sys

from trainers.ranker.cli import main

sys.exit(main())
