from torchls.cli import main

raise SystemExit(main())
