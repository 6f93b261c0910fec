from dreamteacher.cli import main

raise SystemExit(main())
