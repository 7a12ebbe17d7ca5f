# A test double for nixpkgs' `lib` and its module system, written for this
# project: nixpkgs is not available on the machines that run
# tests/tests/nixos_files.rs, and its code is not copied here. It implements,
# from the module system's documented behaviour, only what nixos/*.nix,
# nixos/tests/vm.nix and tests/nixos/eval.nix use:
#
# - evalModules: modules as paths, functions or attribute sets (`imports`,
#   `options`, `config`, `_file`, `freeformType`, or the shorthand of bare
#   config), each path imported once; module arguments `config`, `options`,
#   `lib`, `name` (in submodules) and `_module.args`;
# - definitions: mkIf (a false condition removes the definition), mkMerge,
#   priorities (mkForce 50 < plain 100 < mkDefault 1000 < the option's default
#   1500: only the definitions of the lowest number count), mkOrder (mkBefore
#   500, plain 1000, mkAfter 1500) sorting the definitions that are merged;
# - a definition of an undeclared option fails ("The option `x' does not
#   exist"), unless the module has a freeformType; a definition of the wrong
#   type fails ("... is not of type `t'"); different values for an option that
#   takes one fail ("conflicting definition values");
# - `options.<path>` gives value, isDefined, definitions, definitionsWithLocations
#   (as discharged: mkIf and priorities applied at the option's level);
# - mkRenamedOptionModule: the old name forwards to the new one and warns;
# - the types and list/string/attribute helpers the modules call.
#
# What it leaves out (option documentation, `meta`, disabledModules, type
# merging of declarations made twice, ...) fails loudly or is ignored: a
# module that needs more makes a test fail, never pass by accident.
let
  inherit (builtins)
    all
    any
    attrNames
    attrValues
    concatLists
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    functionArgs
    genList
    hasAttr
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    match
    removeAttrs
    replaceStrings
    sort
    split
    stringLength
    substring
    tail
    toJSON
    typeOf
    ;

  # --- lists, strings, attribute sets -------------------------------------

  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalAttrs = cond: as: if cond then as else { };
  optionalString = cond: s: if cond then s else "";
  last = xs: if xs == [ ] then throw "lib.last: empty list" else elemAt xs (length xs - 1);
  findFirst =
    pred: default: xs:
    let
      found = filter pred xs;
    in
    if found == [ ] then default else head found;
  imap1 = f: xs: genList (i: f (i + 1) (elemAt xs i)) (length xs);
  unique = xs: attrNames (listToAttrs (map (x: {
    name = x;
    value = null;
  }) xs));
  concatMapStringsSep =
    sep: f: xs:
    concatStringsSep sep (map f xs);

  hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
  hasSuffix =
    suf: s:
    let
      ls = stringLength s;
      lf = stringLength suf;
    in
    ls >= lf && substring (ls - lf) lf s == suf;
  removeSuffix =
    suf: s: if hasSuffix suf s then substring 0 (stringLength s - stringLength suf) s else s;
  removePrefix =
    pre: s:
    if hasPrefix pre s then substring (stringLength pre) (stringLength s - stringLength pre) s else s;
  regexSpecials = [
    "\\"
    "["
    "{"
    "("
    ")"
    "^"
    "$"
    "?"
    "*"
    "+"
    "|"
    "."
  ];
  escapeRegex = replaceStrings regexSpecials (map (c: "\\" + c) regexSpecials);
  splitString = sep: s: filter isString (split (escapeRegex sep) s);
  toInt =
    s:
    let
      m = match "(-?)0*([0-9]+)" s;
    in
    if !(isString s) || m == null then
      throw "lib.toInt: ${toJSON s} is not an integer"
    else
      (if head m == "-" then -1 else 1) * builtins.fromJSON (elemAt m 1);
  versionAtLeast = v: min: builtins.compareVersions v min >= 0;
  # Single quotes around everything, each ' written as '\''.
  escapeShellArg = arg: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString arg) + "'";
  escapeShellArgs = concatMapStringsSep " " escapeShellArg;

  genAttrs =
    names: f:
    listToAttrs (map (n: {
      name = n;
      value = f n;
    }) names);
  filterAttrs =
    pred: set:
    listToAttrs (
      concatMap (
        n:
        optional (pred n set.${n}) {
          name = n;
          value = set.${n};
        }
      ) (attrNames set)
    );
  mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  recursiveUpdate =
    lhs: rhs:
    lhs
    // mapAttrs (
      n: v: if isAttrs v && isAttrs (lhs.${n} or null) && !isDerivation v then recursiveUpdate lhs.${n} v else v
    ) rhs;
  setAttrByPath =
    path: value: if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
  getAttrFromPath = path: set: foldl' (s: n: s.${n}) set path;
  attrByPath =
    path: default: set:
    if path == [ ] then
      set
    else if isAttrs set && set ? ${head path} then
      attrByPath (tail path) default set.${head path}
    else
      default;

  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  isStringLike = x: isString x || isPath x || (isAttrs x && (x ? outPath || x ? __toString));
  assertMsg = pred: msg: pred || throw msg;
  importJSON = path: builtins.fromJSON (builtins.readFile path);
  importTOML = path: builtins.fromTOML (builtins.readFile path);

  # --- messages -----------------------------------------------------------

  showName = n: if match "[A-Za-z_][A-Za-z0-9_'-]*" n != null then n else toJSON n;
  showOption = loc: concatStringsSep "." (map showName loc);
  # Shallow: a definition is shown without forcing what it holds.
  showValue =
    v:
    if isString v then
      toJSON v
    else if isInt v || isFloat v then
      toString v
    else if isBool v then
      (if v then "true" else "false")
    else if v == null then
      "null"
    else if isPath v then
      toString v
    else if isDerivation v then
      "<derivation ${v.name or "?"}>"
    else if isAttrs v then
      "{ ${concatMapStringsSep " " (n: "${showName n} = ...;") (attrNames v)} }"
    else if isList v then
      "[ <${toString (length v)} elements> ]"
    else
      "<${typeOf v}>";
  showDefs = defs: concatMapStringsSep "" (d: "\n- In `${d.file}': ${showValue d.value}") defs;
  showFiles = files: concatMapStringsSep ", " (f: "`${f}'") files;

  # --- definitions and their properties -----------------------------------

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  plainPriority = 100;
  mkOrder = priority: content: {
    _type = "order";
    inherit priority content;
  };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;
  plainOrder = 1000;

  kindOf = v: if isAttrs v then v._type or null else null;

  # mkMerge and mkIf at the top of a definition, for an option's value: the
  # list of definitions left.
  discharge =
    loc: v:
    let
      kind = kindOf v;
    in
    if kind == "merge" then
      concatMap (discharge loc) v.contents
    else if kind == "if" then
      if !isBool v.condition then
        throw "mkIf for `${showOption loc}' has a condition that is not a Boolean: ${showValue v.condition}"
      else if v.condition then
        discharge loc v.content
      else
        [ ]
    else
      [ v ];

  # The same above the options: the properties move onto each attribute (their
  # conditions stay unevaluated), giving a list of plain attribute sets.
  pushDown =
    loc: v:
    let
      kind = kindOf v;
      onto = wrap: map (mapAttrs (_: wrap)) (pushDown loc v.content);
    in
    if kind == "merge" then
      concatMap (pushDown loc) v.contents
    else if kind == "if" then
      onto (mkIf v.condition)
    else if kind == "override" then
      onto (mkOverride v.priority)
    else if kind == "order" then
      onto (mkOrder v.priority)
    else if isAttrs v then
      [ v ]
    else
      throw "`${showOption loc}' is a set of options, but is defined as ${showValue v}";

  # defs: [ { file, value } ] for one option (or one element of an attrsOf or
  # listOf). Discharges, keeps the definitions of the strongest priority, sorts
  # them by order, type-checks and merges them.
  mergeDefinitions =
    loc: type: defs:
    let
      discharged = concatMap (
        d:
        map (v: {
          inherit (d) file;
          value = v;
        }) (discharge loc d.value)
      ) defs;
      prio = d: if kindOf d.value == "override" then d.value.priority else plainPriority;
      highestPrio = foldl' (p: d: if prio d < p then prio d else p) 9999 discharged;
      strongest = concatMap (
        d:
        if prio d != highestPrio then
          [ ]
        else if kindOf d.value == "override" then
          map (v: {
            inherit (d) file;
            value = v;
          }) (discharge loc d.value.content)
        else
          [ d ]
      ) discharged;
      order = d: if kindOf d.value == "order" then d.value.priority else plainOrder;
      # builtins.sort is stable: equal orders keep the modules' order.
      sorted = map (d: d // { value = if kindOf d.value == "order" then d.value.content else d.value; }) (
        sort (a: b: order a < order b) strongest
      );
      checked = map (
        d:
        if type.check d.value then
          d
        else
          throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:${showDefs [ d ]}"
      ) sorted;
      isDefined = sorted != [ ];
    in
    {
      inherit isDefined highestPrio;
      defsFinal = sorted;
      mergedValue =
        if isDefined then
          type.merge loc checked
        else
          throw "The option `${showOption loc}' was accessed but has no value defined. Try setting the option.";
    };

  mergeEqualOption =
    loc: defs:
    let
      first = head defs;
    in
    foldl' (
      v: d:
      if d.value == first.value then
        v
      else
        throw "The option `${showOption loc}' has conflicting definition values:${showDefs [
          first
          d
        ]}\nUse `lib.mkForce value` or `lib.mkDefault value` to change the priority on any of these definitions."
    ) first.value (tail defs);

  mergeOneOption =
    loc: defs:
    if length defs == 1 then
      (head defs).value
    else
      throw "The option `${showOption loc}' is defined multiple times while it's expected to be unique.${showDefs defs}";

  # For options without a type: lists concatenated, attribute sets updated,
  # Booleans or'ed, strings joined, anything else must be equal.
  mergeDefaultOption =
    loc: defs:
    let
      vs = map (d: d.value) defs;
    in
    if length defs == 1 then
      head vs
    else if all isList vs then
      concatLists vs
    else if all isAttrs vs then
      foldl' (a: v: a // v) { } vs
    else if all isBool vs then
      any (v: v) vs
    else if all isString vs then
      concatStringsSep "" vs
    else
      mergeEqualOption loc defs;

  # --- types --------------------------------------------------------------

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      merge ? mergeDefaultOption,
    }:
    {
      _type = "option-type";
      inherit
        name
        description
        check
        merge
        ;
    };

  equalType =
    name: description: check:
    mkOptionType {
      inherit name description check;
      merge = mergeEqualOption;
    };

  intBetween =
    lo: hi: description:
    equalType "int" description (x: isInt x && (lo == null || x >= lo) && (hi == null || x <= hi));

  defsOf =
    n: defs:
    concatMap (
      d:
      optional (d.value ? ${n}) {
        inherit (d) file;
        value = d.value.${n};
      }
    ) defs;
  namesOf = defs: attrNames (foldl' (a: d: a // d.value) { } defs);

  types = rec {
    unspecified = mkOptionType { name = "unspecified"; };
    raw = mkOptionType {
      name = "raw";
      description = "raw value";
      merge = mergeOneOption;
    };
    # Attribute sets merged attribute by attribute, anything else must be equal.
    anything = mkOptionType {
      name = "anything";
      merge =
        loc: defs:
        let
          vs = map (d: d.value) defs;
        in
        if all (v: isAttrs v && !isStringLike v) vs then
          (attrsOf anything).merge loc defs
        else if all isStringLike vs && any isAttrs vs then
          mergeOneOption loc defs
        else
          mergeEqualOption loc defs;
    };
    bool = equalType "bool" "boolean" isBool;
    int = intBetween null null "signed integer";
    ints = {
      unsigned = intBetween 0 null "unsigned integer, meaning >=0";
      positive = intBetween 1 null "positive integer, meaning >0";
    };
    port = intBetween 0 65535 "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
    float = equalType "float" "floating point number" isFloat;
    str = equalType "str" "string" isString;
    strMatching =
      pattern:
      equalType "strMatching ${toJSON pattern}" "string matching the pattern ${pattern}" (
        x: isString x && match pattern x != null
      );
    enum =
      values:
      equalType "enum" "one of ${concatMapStringsSep ", " toJSON values}" (x: elem x values);
    path = equalType "path" "path" (x: isStringLike x && substring 0 1 (toString x) == "/");
    package = mkOptionType {
      name = "package";
      check = x: isDerivation x || (isString x && hasPrefix builtins.storeDir x);
      merge = mergeOneOption;
    };
    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _loc: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };
    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _loc: defs: foldl' (a: d: a // d.value) { } defs;
    };

    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = isList;
        merge =
          loc: defs:
          concatLists (
            imap1 (
              i: d:
              map (r: r.mergedValue) (
                filter (r: r.isDefined) (
                  imap1 (
                    j: v:
                    mergeDefinitions (loc ++ [ "[definition ${toString i}-entry ${toString j}]" ]) elemType [
                      {
                        inherit (d) file;
                        value = v;
                      }
                    ]
                  ) d.value
                )
              )
            ) defs
          );
      };
    # Attributes whose definitions all vanish (mkIf false) are left out.
    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = isAttrs;
        merge =
          loc: defs:
          let
            merged = genAttrs (namesOf defs) (n: mergeDefinitions (loc ++ [ n ]) elemType (defsOf n defs));
          in
          mapAttrs (_: r: r.mergedValue) (filterAttrs (_: r: r.isDefined) merged);
      };
    # The same without looking at the values to list the attributes.
    lazyAttrsOf =
      elemType:
      mkOptionType {
        name = "lazyAttrsOf";
        description = "lazy attribute set of ${elemType.description}";
        check = isAttrs;
        merge =
          loc: defs:
          genAttrs (namesOf defs) (n: (mergeDefinitions (loc ++ [ n ]) elemType (defsOf n defs)).mergedValue);
      };
    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${elemType.description}";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (d: d.value == null) defs;
          in
          if length nulls == length defs then
            null
          else if nulls != [ ] then
            throw "The option `${showOption loc}' is defined both null and not null:${showDefs defs}"
          else
            elemType.merge loc defs;
      };
    either =
      a: b:
      mkOptionType {
        name = "either";
        description = "${a.description} or ${b.description}";
        check = x: a.check x || b.check x;
        merge =
          loc: defs:
          let
            vs = map (d: d.value) defs;
          in
          if all a.check vs then
            a.merge loc defs
          else if all b.check vs then
            b.merge loc defs
          else
            mergeEqualOption loc defs;
      };
    oneOf = ts: foldl' either (head ts) (tail ts);

    submodule = modules: submoduleWith { modules = if isList modules then modules else [ modules ]; };
    submoduleWith =
      {
        modules,
        specialArgs ? { },
      }:
      mkOptionType {
        name = "submodule";
        check = x: isAttrs x || isFunction x || path.check x;
        merge =
          loc: defs:
          (evalModules {
            modules =
              modules
              ++ map (
                d:
                if isAttrs d.value then
                  {
                    _file = d.file;
                    config = d.value;
                  }
                else
                  {
                    _file = d.file;
                    imports = [ d.value ];
                  }
              ) defs;
            prefix = loc;
            specialArgs = {
              name = last loc;
            }
            // specialArgs;
          }).config;
      };
  };

  # --- options and modules ------------------------------------------------

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption =
    name:
    mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  isOption = x: isAttrs x && (x._type or null) == "option";

  # The old option reads the new one, passes its definitions on (with their
  # priority), and warns when it is used.
  mkRenamedOptionModule =
    from: to:
    { config, options, ... }:
    let
      old = getAttrFromPath from options;
    in
    {
      options = setAttrByPath from (mkOption {
        visible = false;
        description = "Alias of `${showOption to}'.";
        apply = _: getAttrFromPath to config;
      });
      config = mkMerge [
        {
          warnings = optional old.isDefined "The option `${showOption from}' defined in ${showFiles old.files} has been renamed to `${showOption to}'.";
        }
        (mkIf old.isDefined (setAttrByPath to (mkOverride old.highestPrio (mkMerge old.definitions))))
      ];
    };

  moduleKeys = [
    "_file"
    "key"
    "imports"
    "options"
    "config"
    "freeformType"
  ];

  evalModules =
    {
      modules,
      prefix ? [ ],
      specialArgs ? { },
    }:
    let
      fixedArgs = {
        inherit lib options;
        config = internal;
      }
      // specialArgs;
      # Each argument stays a thunk: calling a module does not evaluate them.
      argsFor =
        f:
        mapAttrs (
          n: _:
          fixedArgs.${n}
            or (internal._module.args.${n} or (throw "evalModules: the module argument `${n}' is missing"))
        ) (filterAttrs (n: hasDefault: !hasDefault || fixedArgs ? ${n}) (functionArgs f));

      load =
        file: key: m:
        let
          fromPath = isPath m || isString m;
          f = if fromPath then import m else m;
          attrs = if isFunction f then f (argsFor f) else f;
          structured = attrs ? options || attrs ? config;
          file' = attrs._file or (if fromPath then toString m else file);
          extra = removeAttrs attrs moduleKeys;
        in
        if !isAttrs attrs then
          throw "evalModules: the module in ${file} is a ${typeOf attrs}, not an attribute set"
        else
          {
            key = if fromPath then toString m else key;
            file = file';
            imports = attrs.imports or [ ];
            options = attrs.options or { };
            config =
              if !structured then
                extra
              else if extra != { } then
                throw "Module `${file'}' has an unsupported attribute `${head (attrNames extra)}' beside `options' or `config'."
              else
                attrs.config or { };
            freeformType = attrs.freeformType or null;
          };

      builtin = {
        _file = "tests/nixos/modules-lite.nix";
        options._module.args = mkOption {
          type = types.lazyAttrsOf types.raw;
          default = { };
        };
      };

      loaded = builtins.genericClosure {
        startSet = imap1 (i: load "<unknown-file>" "${showOption prefix}:${toString i}") ([ builtin ] ++ modules);
        operator = item: imap1 (i: load item.file "${item.key}:${toString i}") item.imports;
      };

      freeformTypes = filter (t: t != null) (map (m: m.freeformType) loaded);
      freeformType = if freeformTypes == [ ] then null else last freeformTypes;

      evalOption =
        loc: decl: defs:
        let
          opt = decl.value;
          type = opt.type or types.unspecified;
          res = mergeDefinitions loc type (
            optional (opt ? default) {
              inherit (decl) file;
              value = mkOptionDefault opt.default;
            }
            ++ defs
          );
        in
        opt
        // {
          inherit loc type;
          inherit (res) isDefined highestPrio;
          value = if opt ? apply then opt.apply res.mergedValue else res.mergedValue;
          definitions = map (d: d.value) res.defsFinal;
          definitionsWithLocations = res.defsFinal;
          files = unique (map (d: d.file) res.defsFinal);
          declarations = [ decl.file ];
        };

      # One level of the option tree: decls and defs are [ { file, value } ],
      # value an attribute set of options or deeper levels (decls) and of plain
      # definitions (defs, after pushDown). rel: the path below `prefix`.
      evalLevel =
        rel: decls: defs:
        let
          loc = prefix ++ rel;
          declNames = namesOf decls;
          declared = genAttrs declNames (_: null);
          node =
            n:
            let
              ds = defsOf n decls;
              here = defsOf n defs;
            in
            if any (d: isOption d.value) ds then
              if length ds > 1 then
                throw "The option `${showOption (loc ++ [ n ])}' is declared more than once, in ${showFiles (map (d: d.file) ds)}."
              else
                { option = evalOption (loc ++ [ n ]) (head ds) here; }
            else
              {
                level = evalLevel (rel ++ [ n ]) ds (
                  concatMap (
                    d:
                    map (v: {
                      inherit (d) file;
                      value = v;
                    }) (pushDown (loc ++ [ n ]) d.value)
                  ) here
                );
              };
          nodes = genAttrs declNames node;
          undeclared = filter (n: !(declared ? ${n})) (namesOf defs);
        in
        {
          options = mapAttrs (_: x: if x ? option then x.option else x.level.options) nodes;
          config =
            (if freeformType == null then { } else attrByPath rel { } freeform)
            // mapAttrs (_: x: if x ? option then x.option.value else x.level.config) nodes;
          unmatched =
            concatMap (
              n:
              map (d: {
                inherit (d) file value;
                path = rel ++ [ n ];
              }) (defsOf n defs)
            ) undeclared
            ++ concatMap (x: if x ? level then x.level.unmatched else [ ]) (attrValues nodes);
        };

      top = evalLevel [ ] (map (m: {
        inherit (m) file;
        value = m.options;
      }) loaded) (
        concatMap (
          m:
          map (v: {
            inherit (m) file;
            value = v;
          }) (pushDown prefix m.config)
        ) loaded
      );

      freeform = if top.unmatched == [ ] then { } else freeformType.merge prefix (
        map (u: {
          inherit (u) file;
          value = setAttrByPath u.path u.value;
        }) top.unmatched
      );

      internal = top.config;
      config = removeAttrs internal [ "_module" ];
      options = top.options;

      check =
        if freeformType == null && top.unmatched != [ ] then
          let
            u = head top.unmatched;
          in
          throw "The option `${showOption (prefix ++ u.path)}' does not exist. Definition values:${showDefs [ u ]}"
        else
          null;
    in
    {
      config = builtins.seq check config;
      inherit options;
    };

  lib = {
    inherit
      # builtins that nixpkgs' lib also offers
      all
      any
      attrNames
      attrValues
      concatLists
      concatMap
      concatStringsSep
      elem
      elemAt
      filter
      foldl'
      genList
      hasAttr
      head
      isAttrs
      isBool
      isFloat
      isFunction
      isInt
      isList
      isPath
      isString
      length
      listToAttrs
      mapAttrs
      removeAttrs
      replaceStrings
      sort
      stringLength
      substring
      tail
      ;
    inherit
      optional
      optionals
      optionalAttrs
      optionalString
      last
      findFirst
      imap1
      unique
      concatMapStringsSep
      hasPrefix
      hasSuffix
      removePrefix
      removeSuffix
      splitString
      toInt
      versionAtLeast
      escapeShellArg
      escapeShellArgs
      genAttrs
      filterAttrs
      mapAttrsToList
      recursiveUpdate
      setAttrByPath
      getAttrFromPath
      attrByPath
      isDerivation
      isStringLike
      assertMsg
      importJSON
      importTOML
      showOption
      mkIf
      mkMerge
      mkOverride
      mkOptionDefault
      mkDefault
      mkForce
      mkOrder
      mkBefore
      mkAfter
      mkOptionType
      mergeEqualOption
      mergeOneOption
      mergeDefaultOption
      types
      mkOption
      mkEnableOption
      literalExpression
      isOption
      mkRenamedOptionModule
      evalModules
      ;
    modules.importJSON = file: {
      _file = toString file;
      config = importJSON file;
    };
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    licenses.bsd2 = {
      spdxId = "BSD-2-Clause";
      shortName = "bsd2";
      fullName = ''BSD 2-clause "Simplified" License'';
    };
  };
in
lib
