# A tiny typed Python package for the contract check (ci/check-nix) and the flake's driver
# checks: built by nixpkgs' buildPythonPackage there, by the stand-in of ci/nix/stubs.nix here.
{ buildPythonPackage, setuptools }:
buildPythonPackage {
  pname = "ntd-check-dep";
  version = "1";
  pyproject = true;
  src = ./ntd-check-dep;
  build-system = [ setuptools ];
}
