from citygw.cli import main

raise SystemExit(main())
