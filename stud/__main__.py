from stud.cli import main

raise SystemExit(main())
