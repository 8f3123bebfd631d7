from satchel.cli.main import main

raise SystemExit(main())
