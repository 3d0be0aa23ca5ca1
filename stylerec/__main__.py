from stylerec.cli import main

raise SystemExit(main())
