import sys

from fedmpi.cli import main

sys.exit(main(exiting=True))
