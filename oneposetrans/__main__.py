from oneposetrans.cli import main

raise SystemExit(main())
