"""Unit tests of nodes.py (no VM): python3 -m unittest discover -s ci/debian-guest -p 'test_*.py'"""

import json
import os
import tarfile
import tempfile
import unittest

import nodes

UNIT = """[Unit]
Description=x

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
RequiredBy=foo.target
Alias=web.service
Also=helper.service
"""


class NodesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.image = os.path.join(self.dir, "image")
        os.makedirs(self.image)
        with open(os.path.join(self.image, "unit-install.json"), "w") as f:
            json.dump({
                "nginx.service": {"path": "/usr/lib/systemd/system/nginx.service",
                                  "install": {"WantedBy": ["multi-user.target"]}},
                "getty@.service": {"path": "/usr/lib/systemd/system/getty@.service",
                                   "install": {"WantedBy": ["getty.target"],
                                               "DefaultInstance": ["tty1"]}},
                "helper.service": {"path": "/usr/lib/systemd/system/helper.service",
                                   "install": {"WantedBy": ["sockets.target"]}},
            }, f)

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def test_load_sorted_names_get_nixos_indices_and_defaults(self):
        self.write("nodes.toml", '[zeta]\n[alpha]\nvlans = [2, 1]\nmemory = 512\n')

        got = nodes.load(self.dir)

        self.assertEqual([(n.name, n.index) for n in got], [("alpha", 1), ("zeta", 2)])
        self.assertEqual(got[0].vlans, [2, 1])
        self.assertEqual(got[0].memory, 512)
        self.assertEqual(got[1].vlans, [1])
        self.assertEqual(nodes.hosts_param(got), "alpha:192.168.2.1,zeta:192.168.1.2")

    def test_load_unknown_key_names_the_node_and_key(self):
        self.write("nodes.toml", '[a]\nvlan = [1]\n')

        with self.assertRaisesRegex(nodes.NodesError, r"node 'a': unknown keys \['vlan'\]"):
            nodes.load(self.dir)

    def test_load_relative_file_path_is_refused(self):
        self.write("nodes.toml", '[a.files]\n"etc/x" = "y"\n')

        with self.assertRaisesRegex(nodes.NodesError, "absolute guest path"):
            nodes.load(self.dir)

    def test_file_modes_from_shebang_table_and_source(self):
        self.write("script.py", "#!/usr/bin/python3\n")
        self.write("nodes.toml", '[a.files]\n"/x" = "#!/bin/sh\\n"\n"/y" = "data"\n'
                   '"/z" = { content = "s", mode = "0600" }\n"/w" = { source = "script.py" }\n')

        files = nodes.load(self.dir)[0].files

        self.assertEqual(files["/x"], (b"#!/bin/sh\n", 0o755))
        self.assertEqual(files["/y"], (b"data", 0o644))
        self.assertEqual(files["/z"], (b"s", 0o600))
        self.assertEqual(files["/w"], (b"#!/usr/bin/python3\n", 0o755))

    def test_enable_links_follow_install_sections(self):
        self.write("nodes.toml", '[a]\nunits = ["app", "nginx.service", "getty@.service", "bare"]\n'
                   '[a.files]\n"/etc/systemd/system/app.service" = """' + UNIT + '"""\n'
                   '"/etc/systemd/system/bare.service" = "[Service]\\nExecStart=/bin/true\\n"\n')
        node = nodes.load(self.dir)[0]
        with open(os.path.join(self.image, "unit-install.json")) as f:
            image_units = json.load(f)

        links = nodes.enable_links(node, image_units)

        app = "/etc/systemd/system/app.service"
        self.assertEqual(links, {
            "/etc/systemd/system/multi-user.target.wants/app.service": app,
            "/etc/systemd/system/foo.target.requires/app.service": app,
            "/etc/systemd/system/web.service": app,
            "/etc/systemd/system/sockets.target.wants/helper.service":
                "/usr/lib/systemd/system/helper.service",
            "/etc/systemd/system/multi-user.target.wants/nginx.service":
                "/usr/lib/systemd/system/nginx.service",
            "/etc/systemd/system/getty.target.wants/getty@tty1.service":
                "/usr/lib/systemd/system/getty@.service",
            "/etc/systemd/system/multi-user.target.wants/bare.service":
                "/etc/systemd/system/bare.service",
        })

    def test_unknown_unit_is_an_error(self):
        self.write("nodes.toml", '[a]\nunits = ["nope.service"]\n')
        node = nodes.load(self.dir)[0]

        with self.assertRaisesRegex(nodes.NodesError, "'nope.service' is neither"):
            nodes.enable_links(node, {})

    def test_node_tar_holds_files_links_identity(self):
        self.write("nodes.toml", '[a]\nunits = ["nginx"]\n[a.files]\n"/srv/i.html" = "hi"\n')
        node = nodes.load(self.dir)[0]
        path = os.path.join(self.dir, "a.tar")

        nodes.write_node_tar(node, self.image, path)

        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            self.assertEqual(tar.extractfile("srv/i.html").read(), b"hi")
            self.assertEqual(tar.extractfile("etc/hostname").read(), b"a\n")
            self.assertRegex(tar.extractfile("etc/machine-id").read().decode(), r"^[0-9a-f]{32}\n$")
        link = members["etc/systemd/system/multi-user.target.wants/nginx.service"]
        self.assertTrue(link.issym())
        self.assertEqual(link.linkname, "/usr/lib/systemd/system/nginx.service")
        self.assertEqual(members["srv/i.html"].uid, 0)

    def test_node_tar_is_the_same_bytes_every_time(self):
        self.write("nodes.toml", '[a]\nunits = ["nginx"]\n[a.files]\n"/srv/i.html" = "hi"\n')
        node = nodes.load(self.dir)[0]
        first, second = (os.path.join(self.dir, n) for n in ("1.tar", "2.tar"))

        nodes.write_node_tar(node, self.image, first)
        nodes.write_node_tar(node, self.image, second)

        with open(first, "rb") as a, open(second, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_driver_config_is_upstream_shape(self):
        self.write("nodes.toml", '[b]\nvlans = [3]\n[a]\n')
        got = nodes.load(self.dir)
        path = os.path.join(self.dir, "driver.json")

        nodes.write_driver_config(got, {"a": "/x/run-a-vm", "b": "/x/run-b-vm"}, "t.py", path)

        with open(path) as f:
            config = json.load(f)
        self.assertEqual(config["vms"]["b"], {"name": "b", "start_script": "/x/run-b-vm"})
        self.assertEqual(config["vlans"], [1, 3])
        self.assertEqual(config["global_timeout"], 3600)
        self.assertEqual(config["containers"], {})
        self.assertIs(config["enable_ssh_backdoor"], False)
        self.assertTrue(os.path.isabs(config["test_script"]))


    def test_container_nodes_load_and_refuse_what_only_a_vm_has(self):
        self.write("nodes.toml", '[c]\ncontainer = true\nvlans = [2]\n[vm]\n')

        got = nodes.load(self.dir)

        self.assertEqual([(n.name, n.container) for n in got], [("c", True), ("vm", False)])
        self.assertEqual(got[0].vlans, [2])
        self.write("nodes.toml", '[c]\ncontainer = true\nmemory = 512\n')
        with self.assertRaisesRegex(nodes.NodesError, r"\['memory'\] do not apply to a container"):
            nodes.load(self.dir)
        self.write("nodes.toml", '[averylongname]\ncontainer = true\n')
        with self.assertRaisesRegex(nodes.NodesError, "at most 10 characters"):
            nodes.load(self.dir)

    def test_driver_config_lists_containers_apart(self):
        self.write("nodes.toml", '[c]\ncontainer = true\n[vm]\nvlans = [2]\n')
        got = nodes.load(self.dir)
        path = os.path.join(self.dir, "driver.json")

        nodes.write_driver_config(got, {"c": "/x/run-c-nspawn", "vm": "/x/run-vm-vm"}, "t.py", path)

        with open(path) as f:
            config = json.load(f)
        self.assertEqual(config["containers"], {"c": {"name": "c", "start_script": "/x/run-c-nspawn"}})
        self.assertEqual(list(config["vms"]), ["vm"])
        self.assertEqual(config["vlans"], [1, 2])

    def test_container_tar_enables_units_of_the_container_root(self):
        units = os.path.join(self.image, "root", "usr", "lib", "systemd", "system")
        os.makedirs(units)
        with open(os.path.join(units, "web.service"), "w") as f:
            f.write("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n")
        self.write("nodes.toml", '[c]\ncontainer = true\nunits = ["web"]\n')
        node = nodes.load(self.dir)[0]
        path = os.path.join(self.dir, "c.tar")

        nodes.write_node_tar(node, self.image, path)

        with tarfile.open(path) as tar:
            link = tar.getmember("etc/systemd/system/multi-user.target.wants/web.service")
        self.assertEqual(link.linkname, "/usr/lib/systemd/system/web.service")


if __name__ == "__main__":
    unittest.main()
