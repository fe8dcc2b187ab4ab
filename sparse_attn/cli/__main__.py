import sys

from sparse_attn.cli import main

sys.exit(main())
