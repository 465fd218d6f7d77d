-- The boot-image tables of MAAS 3.6, as MAAS's own test database creates them:
-- canonical/maas branch 3.6 (commit 9a0645633fb6ab8db318069aae86a54dc408420c),
-- src/maasserver/testing/initial.maas_test.sql. Only the four tables pgbootfs
-- reads, with their columns in MAAS's order, keys, foreign keys and indexes.
-- 3.6 over 3.5: bootresource.alias (migration 0323; the unique key becomes
-- (name, architecture, alias)) and bootresourcefile.filename_on_disk (0330).
CREATE TABLE maasserver_bootresource (
    id              bigserial PRIMARY KEY,
    created         timestamp with time zone NOT NULL,
    updated         timestamp with time zone NOT NULL,
    rtype           integer NOT NULL,
    name            character varying(255) NOT NULL,
    architecture    character varying(255) NOT NULL,
    extra           jsonb NOT NULL,
    kflavor         character varying(32),
    bootloader_type character varying(32),
    rolling         boolean NOT NULL,
    base_image      character varying(255) NOT NULL,
    alias           character varying(255),
    UNIQUE (name, architecture, alias)
);
CREATE TABLE maasserver_largefile (
    id         bigserial PRIMARY KEY,
    created    timestamp with time zone NOT NULL,
    updated    timestamp with time zone NOT NULL,
    sha256     character varying(64) NOT NULL UNIQUE,
    total_size bigint NOT NULL,
    content    oid NOT NULL,
    size       bigint NOT NULL
);
CREATE TABLE maasserver_bootresourceset (
    id          bigserial PRIMARY KEY,
    created     timestamp with time zone NOT NULL,
    updated     timestamp with time zone NOT NULL,
    version     character varying(255) NOT NULL,
    label       character varying(255) NOT NULL,
    resource_id bigint NOT NULL
        REFERENCES maasserver_bootresource(id) DEFERRABLE INITIALLY DEFERRED,
    UNIQUE (resource_id, version)
);
CREATE TABLE maasserver_bootresourcefile (
    id              bigserial PRIMARY KEY,
    created         timestamp with time zone NOT NULL,
    updated         timestamp with time zone NOT NULL,
    filename        character varying(255) NOT NULL,
    filetype        character varying(20) NOT NULL,
    extra           jsonb NOT NULL,
    largefile_id    bigint
        REFERENCES maasserver_largefile(id) DEFERRABLE INITIALLY DEFERRED,
    resource_set_id bigint NOT NULL
        REFERENCES maasserver_bootresourceset(id) DEFERRABLE INITIALLY DEFERRED,
    sha256          character varying(64) NOT NULL,
    size            bigint NOT NULL,
    filename_on_disk character varying(64) NOT NULL,
    UNIQUE (resource_set_id, filename)
);
CREATE INDEX ON maasserver_bootresourcefile (sha256);
CREATE INDEX ON maasserver_bootresourcefile (largefile_id);
CREATE INDEX ON maasserver_bootresourcefile (resource_set_id);
CREATE INDEX ON maasserver_bootresourceset (resource_id);
CREATE INDEX ON maasserver_largefile (sha256 varchar_pattern_ops);
