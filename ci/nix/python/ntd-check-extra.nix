# The extra package a test script of the contract check imports (`extraPythonPackages`); it
# depends on ntd-check-dep, so its type check also needs what it propagates.
{
  buildPythonPackage,
  setuptools,
  ntd-check-dep,
}:
buildPythonPackage {
  pname = "ntd-check-extra";
  version = "1";
  pyproject = true;
  src = ./ntd-check-extra;
  build-system = [ setuptools ];
  dependencies = [ ntd-check-dep ];
}
