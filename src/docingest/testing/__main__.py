"""``python -m docingest.testing``: the local OpenAI-compatible server."""

import sys

from docingest.testing.openai_server import main

sys.exit(main())
