from higgs.cli import main

raise SystemExit(main())
