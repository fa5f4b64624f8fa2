from swag_lora.report.tables import main

raise SystemExit(main())
