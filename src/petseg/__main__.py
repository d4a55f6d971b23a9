from petseg.cli import main

raise SystemExit(main())
