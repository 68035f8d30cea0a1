from k8s_sql.cli import main

main()
