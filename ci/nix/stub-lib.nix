# The few functions of nixpkgs' `lib` that nix/*.nix and the framework restatement use, written
# here from their documented behaviour (no nixpkgs store path is reachable on this project's
# machines). `fileset.toSource` really filters the source tree, so the packaged sources the
# cargo check sees are exactly the ones `nix/package.nix` selects.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    isList
    length
    stringLength
    substring
    ;

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;

  # Everything that `toString` of a list gives, but safe to paste into a shell command.
  escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";
in
rec {
  inherit escapeShellArg;
  escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);

  optionals = cond: list: if cond then list else [ ];
  optional = cond: item: if cond then [ item ] else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: attrs: if cond then attrs else { };

  assertMsg = cond: msg: cond || throw msg;

  inherit concatStringsSep;
  concatStrings = concatStringsSep "";
  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  stringToCharacters = s: builtins.genList (i: substring i 1 s) (stringLength s);
  makeBinPath = packages: concatStringsSep ":" (map (p: "${p}/bin") packages);
  getExe = p: "${p}/bin/${p.meta.mainProgram}";

  unique = foldl' (seen: x: if elem x seen then seen else seen ++ [ x ]) [ ];
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
  inherit (builtins) mapAttrs attrNames attrValues;
  genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);

  platforms.linux = [
    "x86_64-linux"
    "aarch64-linux"
  ];

  fileset = {
    unions = paths: if isList paths then paths else throw "fileset.unions takes a list";

    # Keep a path when it is one of the members, lies below one, or is a directory on the way
    # to one; everything else of `root` stays out of the store copy.
    toSource =
      { root, fileset }:
      let
        members = map toString fileset;
        wanted =
          path: _type:
          let
            p = toString path;
          in
          length (filter (m: p == m || hasPrefix (m + "/") p || hasPrefix (p + "/") m) members) > 0;
      in
      builtins.path {
        name = "source";
        path = root;
        filter = wanted;
      };
  };
}
