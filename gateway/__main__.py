from citygw.commands.cli import main

raise SystemExit(main())
