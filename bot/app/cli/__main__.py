"""`python -m bot.app.cli`: the same as the `patientbot` command."""

import sys

from bot.app.cli.main import main

sys.exit(main())
