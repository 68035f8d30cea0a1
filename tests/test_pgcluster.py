"""The test PostgreSQL itself: it runs from a temp dir and answers SQL."""


def test_temp_cluster_answers(pg):
    assert pg.psql("select 1") == "1"
    assert pg.data_dir.startswith(pg.base)
    assert pg.psql("show config_file") == f"{pg.config_dir}/postgresql.conf"


def test_create_database(pg):
    pg.create_database("scratch")
    assert "scratch" in pg.psql("select datname from pg_database")
