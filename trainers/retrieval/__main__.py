import sys

from trainers.retrieval.cli import main

sys.exit(main())
