import sys

from miniworld.world import main

sys.exit(main())
