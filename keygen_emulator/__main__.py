"""`python -m keygen_emulator --port 8001 ...`: see server.main()."""

from keygen_emulator.server import main

raise SystemExit(main())
