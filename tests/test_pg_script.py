"""Pure helpers of the PostgreSQL tier: dump header normalisation, TOC selection, role renaming."""
from kryonix_dagster.engine.pg_script import (checksum_assertion, ddl_label, foreign_keys_touching, guarded_foreign_key,
                                              parse_toc, rename_roles, schema_entries, statements)
from kryonix_dagster.engine.pgdump_header import normalize_dump_header



def real_header(sec: int, minute: int) -> bytes:
    def i(v):
        return b"\x00" + v.to_bytes(4, "little")
    return (b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + i(0) + i(sec) + i(minute) + i(6) + i(29) + i(10) + i(126) + i(0)
            + i(5) + b"db_42" + b"rest of the archive")


def test_dump_header_time_is_fixed_and_the_rest_kept():
    a, b = real_header(49, 36), real_header(12, 37)
    assert a != b
    na, nb = normalize_dump_header(a), normalize_dump_header(b)
    assert na == nb and len(na) == len(a)
    assert na.endswith(b"db_42rest of the archive")
    assert na[:16] == a[:16]  # magic, version, sizes, format, compression untouched


def test_unknown_archives_pass_unchanged():
    for data in (b"", b"PGDMP", b"not a dump at all", b"PGDMP" + bytes([2, 14, 0, 4, 8, 1]) + b"x" * 60):
        assert normalize_dump_header(data) == data


LISTING = """;
; Archive created at 2000-01-01 00:00:00 UTC
9; 2615 17250 SCHEMA - crm postgres
3483; 0 0 ACL - SCHEMA crm postgres
8; 2615 17249 SCHEMA - auth postgres
215; 1259 16386 TABLE crm contatos postgres
3350; 0 16386 TABLE DATA crm contatos postgres
3200; 2606 16392 CONSTRAINT crm contatos contatos_pkey postgres
3210; 2606 16400 FK CONSTRAINT crm contatos contatos_responsavel_id_fkey postgres
3211; 2606 16401 FK CONSTRAINT lgpd consentimentos consentimentos_contato_id_fkey postgres
3300; 1259 16500 INDEX crm contatos_ultimo_contato postgres
3301; 0 0 SEQUENCE SET crm contatos_id_seq postgres
3302; 0 0 ACL crm TABLE contatos postgres
"""


def test_schema_selection_takes_its_objects_and_splits_foreign_keys():
    entries = parse_toc(LISTING)
    main, fks = schema_entries(entries, "crm")
    assert [e.kind for e in main] == ["SCHEMA", "ACL", "TABLE", "TABLE DATA", "CONSTRAINT", "INDEX",
                                      "SEQUENCE SET", "ACL"]
    assert [e.name for e in fks] == ["contatos contatos_responsavel_id_fkey"]
    assert all("lgpd" not in e.line and "auth" not in e.line for e in main + fks)


FK_SCRIPT = '''--
-- Name: mensagens mensagens_contato_id_fkey; Type: FK CONSTRAINT; Schema: whatsapp; Owner: postgres
--

ALTER TABLE ONLY whatsapp.mensagens
    ADD CONSTRAINT mensagens_contato_id_fkey FOREIGN KEY (contato_id) REFERENCES crm.contatos(id);


ALTER TABLE ONLY crm.contatos
    ADD CONSTRAINT "Resp ""x""" FOREIGN KEY (responsavel_id) REFERENCES auth.usuarios(id) ON DELETE SET NULL;


ALTER TABLE ONLY marketing.envios
    ADD CONSTRAINT envios_campanha_id_fkey FOREIGN KEY (campanha_id) REFERENCES marketing.campanhas(id);


ALTER TABLE ONLY crm_old.notas
    ADD CONSTRAINT notas_fkey FOREIGN KEY (x) REFERENCES crm_old.contatos(id);
'''


def test_foreign_keys_touching_a_schema_are_inbound_and_outbound_only():
    found = foreign_keys_touching(statements(FK_SCRIPT), "crm")
    assert [(fk.table, fk.name) for fk in found] == [("whatsapp.mensagens", "mensagens_contato_id_fkey"),
                                                     ("crm.contatos", 'Resp "x"')]
    assert found[1].statement.endswith("REFERENCES auth.usuarios(id) ON DELETE SET NULL")
    assert ddl_label(found[0].statement) == "foreign key whatsapp.mensagens.mensagens_contato_id_fkey"
    assert ddl_label("CREATE INDEX  idx ON crm.contatos\n USING btree (nome)") == "CREATE INDEX idx ON crm.contatos USING btree (nome)"


def test_role_names_are_rewritten_outside_copy_data_only():
    script = [
        "GRANT SELECT ON TABLE crm.contatos TO kryonix_cliente_1_app;\n",
        "ALTER TABLE crm.contatos OWNER TO kryonix_cliente_1_leitura;\n",
        "COPY crm.notas (id, texto) FROM stdin;\n",
        "1\tkryonix_cliente_1_app is mentioned in data\n",
        "\\.\n",
        "GRANT USAGE ON SCHEMA crm TO kryonix_cliente_10_app;\n",  # another tenant: untouched
    ]
    out = list(rename_roles(script, "kryonix_cliente_1_", "kryonix_cliente_7_"))
    assert out[0] == "GRANT SELECT ON TABLE crm.contatos TO kryonix_cliente_7_app;\n"
    assert out[1].endswith("OWNER TO kryonix_cliente_7_leitura;\n")
    assert out[3] == script[3]
    assert out[5] == script[5]


def test_statements_drop_comments_settings_and_meta_commands():
    script = ("\\restrict abc\n--\n-- Name: x\n--\nSET statement_timeout = 0;\n"
              "ALTER TABLE ONLY crm.contatos\n    ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES auth.u(id);\n\n"
              "\\unrestrict abc\n")
    assert statements(script) == ["ALTER TABLE ONLY crm.contatos\n    ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES auth.u(id)"]
    block = guarded_foreign_key(statements(script)[0], "fk")
    assert "NOT VALID" in block and "undefined_table" in block


def dollar_tag(block: str) -> str:
    return block.split("\n", 1)[0].split()[1]


def test_dollar_quote_tag_is_random_and_never_in_the_tenant_text():
    hostile = 'ALTER TABLE crm."a$kryonix$b" ADD CONSTRAINT "$kryonix$" FOREIGN KEY (x) REFERENCES auth.u(id)'
    blocks = [guarded_foreign_key(hostile, "fk"), checksum_assertion('crm."x$kryonix$"', 3, "12"),
              guarded_foreign_key(hostile, "fk")]
    tags = [dollar_tag(b) for b in blocks]
    assert len(set(tags)) == 3
    for block, tag in zip(blocks, tags):
        assert tag.startswith("$") and tag.endswith("$") and tag != "$kryonix$"
        assert block.count(tag) == 2 and block.rstrip().endswith(tag + ";")


def test_hostile_names_run_as_one_do_block_in_psql():
    """psql parses the block whole: the tenant's `$kryonix$` text cannot end the quote early."""
    import subprocess
    block = checksum_assertion('pg_temp."t$kryonix$"', 0, "0")
    script = 'CREATE TEMP TABLE "t$kryonix$" (x int);\n' + block
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-XAtq", "-v", "ON_ERROR_STOP=1"],
                         input=script, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
