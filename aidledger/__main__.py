from aidledger.cli import main

raise SystemExit(main())
