from rmcore.cli import main

raise SystemExit(main())
