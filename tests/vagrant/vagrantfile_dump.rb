# Evaluates a Vagrantfile against a stand-in for Vagrant's configuration API and prints, as JSON,
# what it declares: the global settings and each machine's own. It lets the tests run the
# Vagrantfile's Ruby for real (environment handling, addressing, errors) without Vagrant, which is
# not installed for the test suite (Debian's package recommends a whole libvirt stack).
#
# Usage: ruby vagrantfile_dump.rb VAGRANTFILE
require "json"

# `name = value` settings of a provider block, e.g. `libvirt.memory = 512`.
class ProviderSettings
  def initialize
    @values = {}
  end

  def to_h
    @values
  end

  def method_missing(name, *args)
    return super unless name.end_with?("=") && args.length == 1

    @values[name.to_s.delete_suffix("=")] = args.first
  end

  def respond_to_missing?(name, include_private = false)
    name.end_with?("=") || super
  end
end

# `config.vm`: only the settings the lab's Vagrantfile may use; anything else is an error, as an
# unknown setting is for `vagrant validate`.
class VMSettings
  attr_accessor :box, :hostname

  def initialize
    @networks = []
    @synced_folders = []
    @provisioners = []
    @providers = {}
    @machines = {}
  end

  def network(type, **options)
    @networks << { type: type }.merge(options)
  end

  def synced_folder(source, destination, **options)
    @synced_folders << { source: source, destination: destination }.merge(options)
  end

  def provision(name, **options)
    @provisioners << { name: name }.merge(options)
  end

  def provider(name)
    yield(@providers[name.to_s] ||= ProviderSettings.new)
  end

  def define(name)
    machine = Config.new
    yield machine
    @machines[name.to_s] = machine
  end

  def to_h
    { box: box, hostname: hostname, networks: @networks, synced_folders: @synced_folders,
      provisioners: @provisioners, providers: @providers.transform_values(&:to_h) }
  end

  attr_reader :machines
end

# What `Vagrant.configure("2")` yields.
class Config
  attr_reader :vm

  def initialize
    @vm = VMSettings.new
  end
end

# The one entry point a Vagrantfile calls.
module Vagrant
  CONFIG = Config.new

  def self.configure(version)
    raise ArgumentError, "unsupported configuration version #{version}" unless version == "2"

    yield CONFIG
  end
end

load ARGV.fetch(0)
vm = Vagrant::CONFIG.vm
puts JSON.generate(global: vm.to_h, machines: vm.machines.transform_values { |m| m.vm.to_h })
